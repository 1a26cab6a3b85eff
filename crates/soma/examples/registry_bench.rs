//! ToolRegistry benchmarks, both through the mesh runtime (mTLS, per-method
//! authorization, the gateway's signed claims on every call):
//!
//! 1. server CPU per call of `ExecuteTool` (the repository's `text_stats`
//!    adapter, a ~200-byte input) against an Analytics read of similar size,
//!    `InclusionProof` of a recorded billing event, in alternating
//!    closed-loop rounds (target: at most 1.5 times);
//! 2. `--rate` executions per second for `--seconds` with the billing
//!    outbox delivering to a real Analytics over mTLS, Analytics in a
//!    process of its own: achieved rate and latency, the outbox backlog
//!    each second and how long it takes to drain, the RSS of the registry's
//!    process and of Analytics' each second (target, the registry's: flat
//!    within 10 % after the first seconds), and every execution found in
//!    Analytics.
//!
//! The read is `InclusionProof` rather than `LedgerCheckpoint` because it
//! is the closer peer of an execution: a request naming a stored item (an
//! event id, as `ExecuteTool` names a release), the server reading and
//! MAC-checking rows in SQLite and computing something from them (the
//! audit path), and a reply of a few hundred bytes; `LedgerCheckpoint`
//! takes an empty request and returns the latest row as stored. The
//! events proven rotate over the recorded ones. Both calls are the
//! gateway's, with claims, so the mesh does the same work for each; their
//! protobuf sizes are printed.
//!
//! Each server runs alone on its own OS thread with a current-thread tokio
//! runtime (`common/bench.rs`), on SQLite in a temp dir, with SVIDs minted
//! at run time by a development authority; the clients run on the main
//! thread's runtime and call as the gateway (`/svc/gateway`), each call
//! with a freshly signed claims envelope of tenant `acme`.
//!
//! What a server's CPU is, part 1: the `utime + stime` of its runtime
//! thread and of that runtime's blocking pool (named alike, so counted by
//! `ServerThread::cpu`; the sandbox runs each adapter there), plus the
//! threads it owns outside its runtime, read per thread from `/proc`
//! (`common/threads.rs`): its SQLite connection threads (sqlx runs each
//! connection on a thread of its own; a connection thread belongs to the
//! server whose pool opened it, that is the one started or called when the
//! thread first appeared) and, for Analytics, its ledger writer thread.
//! The registry starts with no Analytics peer: each execution's billing row
//! is written to its outbox and stays there, which is real per-call work.
//! The sandbox's epoch ticker (a thread that advances wasmtime's epoch
//! every millisecond, whatever the load) is measured separately, from
//! `schedstat` (its few µs per tick are below the clock tick of `stat`),
//! and is not in the headline ratio; a second ratio adds it.
//!
//! Part 2 runs Analytics in a child process: this program started again
//! with the hidden `--serve-analytics DIR`, which opens the development
//! authority in `DIR` (the one this process made, so both hold SVIDs of the
//! same root), serves Analytics on `127.0.0.1:0` with its SQLite database in
//! `DIR`, prints its address on standard output and serves until its
//! standard input closes. Analytics keeps by design an in-memory view of
//! every ledger leaf, so its memory grows with the events recorded; in a
//! process of its own, that growth is not charged to the registry. The
//! registry's RSS is this process's: the registry's server thread and the
//! client, which holds no memory that grows with the run (the open loop
//! reaps finished calls as it goes, `common/soak.rs`, and the latencies and
//! the execution ids answered are kept in vectors written before the load).
//! The child's RSS is sampled from `/proc/<pid>/status` beside it. After the
//! drain the child is stopped, and its billing events are read from its
//! SQLite file.
//!
//! Nothing here passes or fails on timing: the targets are printed next to
//! the measurements. The process fails when a call fails, or when the
//! billing events in Analytics are not exactly the executions made: then
//! the figures would describe something else.
//!
//! The last lines are `result.<key>=<value>`, for `scripts/bench/registry.sh`.

#[path = "common/bench.rs"]
#[expect(
    dead_code,
    reason = "bench::open_loop keeps every finished call: part 2 uses soak::open_loop_flat"
)]
mod bench;
#[path = "common/soak.rs"]
mod soak;
#[path = "common/threads.rs"]
mod threads;

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::StreamExt as _;
use prost::Message as _;
use soma_auth::{ClaimsSigner, ClaimsVerifier};
use soma_ca::Authority;
use soma_identity::{SpiffeId, SvidStore, TrustDomain};
use soma_mesh::{Application, MeshSettings, ServiceKind};
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_proto::v1::tool_registry_client::ToolRegistryClient;
use soma_sandbox::SandboxConfig;
use soma_sign::{Ed25519Signer, HmacKeyring, KeyId};
use soma_store::{Database, StoreSettings};
use soma_tool_registry::{Price, Registry, RegistryConfig};
use tonic::transport::Channel;

use crate::bench::{
    CpuSample, Latencies, Serve, ServerThread, Started, clock_ticks_per_second, closed_loop, identity,
    measure_cpu, progress,
};
use crate::soak::{open_loop_flat, resident_vec};
use crate::threads::{Spent, Threads, process_rss_kib, rss_kib};

const TRUST_DOMAIN: &str = "somastack.bench";
const TENANT: &str = "acme";
const TOOL: &str = "text-stats";
const VERSION: &str = "1.0.0";
const OPERATOR: &str = "/operator/bench";
const EXECUTE_PATH: &str = "/somastack.v1.ToolRegistry/ExecuteTool";
const PROOF_PATH: &str = "/somastack.v1.Analytics/InclusionProof";

/// Thread names as `/proc` keeps them (15 bytes): the sandbox's epoch
/// ticker (`soma-sandbox-epoch`), sqlx's SQLite connection threads
/// (`sqlx-sqlite-worker-<n>`) and Analytics' ledger writer.
const EPOCH_THREAD: &str = "soma-sandbox-ep";
const SQLITE_THREAD: &str = "sqlx-sqlite-wor";
const LEDGER_THREAD: &str = "soma-ledger";
/// The part 1 servers' threads (at most 15 bytes, see `ServerThread::spawn`).
const REGISTRY_THREAD: &str = "bench-registry";
const ANALYTICS_THREAD: &str = "bench-analytics";
/// The thread serving Analytics in part 2's child process.
const ANALYTICS_PROCESS_THREAD: &str = "load-analytics";

/// Longest wait for part 2's Analytics process to stop once its standard
/// input is closed.
const CHILD_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The text of every execution: with `{"text":...}` around it, about 200
/// bytes of JSON.
const INPUT_TEXT: &str = "SomaStack runs verified WebAssembly adapters in a sandbox with fuel, memory and \
                          deadline limits; every run is billed from what the sandbox measured, through a \
                          durable outbox.";

/// The peak linear memory of the seeded billing events: 17 WebAssembly
/// pages, a Rust adapter's initial memory.
const SEED_PEAK_MEMORY_BYTES: u64 = 17 * 64 * 1024;

/// Targets set by the issue; printed, never asserted.
const TARGET_CPU_RATIO: f64 = 1.5;
const TARGET_RSS_DEVIATION_PCT: f64 = 10.0;

#[derive(Debug, Parser)]
#[command(about = "ToolRegistry: ExecuteTool CPU against an Analytics read, and executions/s sustained")]
struct Args {
    /// Closed-loop calls measured per round and server (part 1).
    #[arg(long, default_value_t = 5_000)]
    requests: u32,
    /// Closed-loop calls before measuring, per server (part 1).
    #[arg(long, default_value_t = 500)]
    warmup: u32,
    /// Closed-loop rounds; the order of the two servers alternates (part 1).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Billing events recorded in Analytics before its reads (part 1).
    #[arg(long, default_value_t = 300)]
    events: u32,
    /// Executions launched per second (part 2).
    #[arg(long, default_value_t = 1_000)]
    rate: u32,
    /// Seconds of load (part 2).
    #[arg(long, default_value_t = 60)]
    seconds: u32,
    /// First seconds of the load whose RSS is warm-up: the RSS at their end
    /// is the reference of the rest (part 2).
    #[arg(long, default_value_t = 5)]
    rss_warmup: u32,
    /// Longest wait for the outbox to drain after the load, in seconds (part 2).
    #[arg(long, default_value_t = 120)]
    drain_timeout: u64,
    /// Serves Analytics alone, for part 2 (this program's child): the
    /// authority and the database in `DIR`, the address on standard output,
    /// until standard input closes.
    #[arg(long, value_name = "DIR", hide = true)]
    serve_analytics: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.serve_analytics {
        return serve_analytics(dir);
    }
    if args.requests == 0 || args.rounds == 0 || args.events == 0 || args.rate == 0 {
        bail!("--requests, --rounds, --events and --rate must be greater than zero");
    }
    if args.seconds <= args.rss_warmup {
        bail!("--seconds must be greater than --rss-warmup");
    }
    let ticks_per_second = clock_ticks_per_second()?;
    let ca_dir = tempfile::tempdir()?;
    let world = World::new(ca_dir.path())?;

    progress("== part 1: server CPU per call, ExecuteTool against Analytics InclusionProof");
    let cpu = cpu_part(&args, ticks_per_second, &world)?;
    cpu.print(&args);

    progress(&format!(
        "== part 2: {} executions/s for {} s, the outbox delivering to Analytics in a process of its own",
        args.rate, args.seconds
    ));
    let load = load_part(&args, &world)?;
    load.print(&args);

    if load.failures > 0 {
        bail!(
            "{} of {} executions failed (first: {}): the figures describe something else",
            load.failures,
            load.launched,
            load.first_failure.as_deref().unwrap_or("?")
        );
    }
    if load.billing_missing > 0 || load.billing_unexpected > 0 || load.backlog_drained.is_none() {
        bail!(
            "Analytics holds {} billing events for {} executions ({} missing, {} unexpected){}",
            load.billing_events,
            load.executions,
            load.billing_missing,
            load.billing_unexpected,
            if load.backlog_drained.is_none() {
                "; the outbox did not drain"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// The authority and the identities and keys every server and client share.
struct World {
    /// The authority's directory (`DIR/ca`), which part 2's Analytics
    /// process opens too.
    dir: PathBuf,
    authority: Authority,
    /// The gateway's claims key (tenant envelopes).
    claims: Arc<ClaimsSigner>,
    /// The gateway's SVID: every measured call is the gateway's.
    gateway: Arc<SvidStore>,
    registry_id: SpiffeId,
    analytics_id: SpiffeId,
}

impl World {
    fn new(ca_dir: &Path) -> anyhow::Result<Self> {
        let td = TrustDomain::parse(TRUST_DOMAIN)?;
        let authority = Authority::open_or_create(ca_dir, &td).context("opening the authority")?;
        let (claims, _) = ClaimsSigner::generate("gateway-1")?;
        let gateway = identity(&authority, &ServiceKind::Gateway.spiffe_path())?;
        Ok(Self {
            dir: ca_dir.to_owned(),
            registry_id: SpiffeId::from_parts(&td, &ServiceKind::ToolRegistry.spiffe_path())?,
            analytics_id: SpiffeId::from_parts(&td, &ServiceKind::Analytics.spiffe_path())?,
            authority,
            claims: Arc::new(claims),
            gateway,
        })
    }

    /// The verifier of the gateway's envelopes addressed to `own`.
    fn verifier(&self, own: &SpiffeId) -> anyhow::Result<ClaimsVerifier> {
        let gateway =
            SpiffeId::from_parts(self.authority.trust_domain(), &ServiceKind::Gateway.spiffe_path())?;
        Ok(ClaimsVerifier::new(
            gateway,
            own.clone(),
            vec![(self.claims.key_id().to_owned(), self.claims.public_key())],
        ))
    }

    /// A client of the registry at `addr` under the SPIFFE ID `path`.
    fn registry_client(&self, path: &str, addr: SocketAddr) -> anyhow::Result<ToolRegistryClient<Channel>> {
        let store = if path == ServiceKind::Gateway.spiffe_path() {
            Arc::clone(&self.gateway)
        } else {
            identity(&self.authority, path)?
        };
        Ok(ToolRegistryClient::new(soma_mesh::channel(
            store,
            addr,
            self.registry_id.clone(),
        )?))
    }

    /// A client of Analytics at `addr` under the SPIFFE ID `path`.
    fn analytics_client(&self, path: &str, addr: SocketAddr) -> anyhow::Result<AnalyticsClient<Channel>> {
        let store = if path == ServiceKind::Gateway.spiffe_path() {
            Arc::clone(&self.gateway)
        } else {
            identity(&self.authority, path)?
        };
        Ok(AnalyticsClient::new(soma_mesh::channel(
            store,
            addr,
            self.analytics_id.clone(),
        )?))
    }
}

/// The clients' runtime, on the calling thread.
fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `message` as the gateway forwards a call of tenant [`TENANT`] holding
/// `capability`, to the service `audience`.
fn tenant_request<T>(
    claims: &ClaimsSigner,
    audience: &SpiffeId,
    capability: &str,
    message: T,
) -> anyhow::Result<tonic::Request<T>> {
    let verified = pb::VerifiedClaims {
        tenant: TENANT.to_owned(),
        subject: format!("user@{TENANT}"),
        region: "local".to_owned(),
        capabilities: vec![capability.to_owned()],
        mfa: true,
        request_id: "bench".to_owned(),
        ..Default::default()
    };
    let signed = claims.sign(verified, audience, Duration::from_secs(30), SystemTime::now())?;
    let mut request = tonic::Request::new(message);
    signed.insert_into(request.metadata_mut());
    Ok(request)
}

/// Starts the tool registry on its own thread `name`, on SQLite in
/// `data_dir`, its outbox delivering to `analytics` when given (else its
/// rows stay); returns the server and a handle on the registry (its outbox
/// backlog).
fn start_registry(
    name: &str,
    world: &World,
    data_dir: &Path,
    analytics: Option<(SocketAddr, SpiffeId)>,
) -> anyhow::Result<(ServerThread, Registry)> {
    let store = identity(&world.authority, &ServiceKind::ToolRegistry.spiffe_path())?;
    let verifier = world.verifier(store.own_id())?;
    let data_dir = data_dir.to_owned();
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let server = ServerThread::spawn(name, move |stop| async move {
        let kind = ServiceKind::ToolRegistry;
        let settings = MeshSettings::load(kind, None, |_| None)?;
        let db = Database::connect(&StoreSettings::sqlite(data_dir), kind.name()).await?;
        db.migrate(&soma_tool_registry::MIGRATIONS).await?;
        let (keys, _) = HmacKeyring::generate("registry-1")?;
        let config = RegistryConfig {
            keys,
            keys_path: PathBuf::new(),
            price: Price::default(),
            max_module_bytes: soma_tool_registry::config::DEFAULT_MAX_MODULE_BYTES,
        };
        let registry = Registry::new(db.clone(), config, SandboxConfig::default())?;
        // Spawned here, so that delivery runs on this server's runtime.
        let outbox = match analytics {
            Some((addr, id)) => {
                Some(registry.spawn_outbox(soma_mesh::channel(Arc::clone(&store), addr, id)?))
            }
            None => None,
        };
        let spec = soma_tool_registry::spec(db, registry.clone(), &settings.limits);
        let app = Application::build(settings, store, Some(verifier), spec).await?;
        let (addr, metrics) = (app.local_addr(), app.metrics());
        handle_tx
            .send(registry)
            .context("the benchmark stopped waiting for the registry")?;
        let serve: Serve = Box::pin(async move {
            let served = app
                .run_until_stopped(async move {
                    let _ = stop.await;
                })
                .await
                .context("registry server");
            if let Some(outbox) = outbox {
                outbox.abort();
            }
            served
        });
        Ok(Started {
            addr,
            serve,
            metrics: Some(metrics),
        })
    })?;
    let registry = handle_rx.recv().context("the registry thread sent no handle")?;
    Ok((server, registry))
}

/// Starts Analytics on its own thread `name`, on SQLite in `data_dir`,
/// with an SVID of `authority` and fresh row and signing keys; `verifier`
/// checks the gateway's claims (none: Analytics refuses every envelope, and
/// serves the registry's calls, which carry none).
fn start_analytics(
    name: &str,
    authority: &Authority,
    verifier: Option<ClaimsVerifier>,
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
    ServerThread::spawn(name, move |stop| async move {
        let kind = ServiceKind::Analytics;
        let settings = MeshSettings::load(kind, None, |_| None)?;
        let db = Database::connect(&StoreSettings::sqlite(data_dir), kind.name()).await?;
        db.migrate(&soma_analytics::MIGRATIONS).await?;
        let spec = soma_analytics::spec(db, &settings.limits, config).await?;
        let app = Application::build(settings, store, verifier, spec).await?;
        let (addr, metrics) = (app.local_addr(), app.metrics());
        let serve: Serve = Box::pin(async move {
            app.run_until_stopped(async move {
                let _ = stop.await;
            })
            .await
            .context("analytics server")
        });
        Ok(Started {
            addr,
            serve,
            metrics: Some(metrics),
        })
    })
}

/// Registers a fresh publisher key as an operator and publishes
/// `text_stats` as [`TOOL`]@[`VERSION`] through the gateway's identity.
async fn publish_text_stats(world: &World, registry: SocketAddr) -> anyhow::Result<()> {
    let (signer, pkcs8) = Ed25519Signer::generate(KeyId::new("publisher")?)?;
    world
        .registry_client(OPERATOR, registry)?
        .add_publisher_key(pb::AddPublisherKeyRequest {
            name: "bench-tools".to_owned(),
            public_key_pem: signer.public_key_pem(),
        })
        .await
        .context("registering the publisher key")?;
    let module = soma_sandbox::adapter("text_stats").context("no text_stats adapter")?;
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
        "text statistics",
        &module,
    )?;
    let envelope = soma_release::sign_manifest(&manifest, &soma_testing::pem("PRIVATE KEY", &pkcs8))?;
    let request = pb::PublishReleaseRequest {
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
        .registry_client(&ServiceKind::Gateway.spiffe_path(), registry)?
        .publish_release(tenant_request(
            &world.claims,
            &world.registry_id,
            "tools:publish",
            request,
        )?)
        .await
        .context("publishing text_stats")?;
    Ok(())
}

/// `ExecuteTool` of [`TOOL`] with the fixed input, as the gateway.
#[derive(Clone)]
struct Executor {
    client: ToolRegistryClient<Channel>,
    claims: Arc<ClaimsSigner>,
    audience: SpiffeId,
    input: prost_types::Struct,
}

impl Executor {
    fn new(world: &World, registry: SocketAddr) -> anyhow::Result<Self> {
        use prost_types::value::Kind;
        let text = prost_types::Value {
            kind: Some(Kind::StringValue(INPUT_TEXT.to_owned())),
        };
        Ok(Self {
            client: world.registry_client(&ServiceKind::Gateway.spiffe_path(), registry)?,
            claims: Arc::clone(&world.claims),
            audience: world.registry_id.clone(),
            input: prost_types::Struct {
                fields: [("text".to_owned(), text)].into_iter().collect(),
            },
        })
    }

    fn request(&self) -> pb::ExecuteToolRequest {
        pb::ExecuteToolRequest {
            tool: TOOL.to_owned(),
            version: VERSION.to_owned(),
            input: Some(self.input.clone()),
            run_id: String::new(),
        }
    }

    /// One execution, which must answer an output and a billing event.
    fn call(&self) -> impl Future<Output = anyhow::Result<pb::ExecuteToolResponse>> + Send + 'static {
        let this = self.clone();
        async move {
            let request = tenant_request(&this.claims, &this.audience, "tools:execute", this.request())?;
            let response = this.client.clone().execute_tool(request).await?.into_inner();
            if response.output.is_none() || response.billing_event_id.is_empty() {
                bail!("ExecuteTool answered no output or no billing event: {response:?}");
            }
            Ok(response)
        }
    }
}

/// `InclusionProof` of the recorded events in turn, as the gateway.
#[derive(Clone)]
struct Prover {
    client: AnalyticsClient<Channel>,
    claims: Arc<ClaimsSigner>,
    audience: SpiffeId,
    events: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
}

impl Prover {
    fn request(&self) -> pb::InclusionProofRequest {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.events.len();
        pb::InclusionProofRequest {
            event_id: self.events[i].clone(),
            tree_size: 0,
        }
    }

    /// One proof, which must prove a leaf of the tree it names.
    async fn call(&self) -> anyhow::Result<pb::InclusionProofResponse> {
        let request = tenant_request(&self.claims, &self.audience, "ledger:read", self.request())?;
        let response = self.client.clone().inclusion_proof(request).await?.into_inner();
        if response.leaf_index >= response.tree_size || response.proof.is_empty() {
            bail!(
                "InclusionProof answered leaf {} of a tree of {} with {} hashes",
                response.leaf_index,
                response.tree_size,
                response.proof.len()
            );
        }
        Ok(response)
    }
}

/// Records `count` billing events of [`TENANT`] in Analytics at `addr`, as
/// the registry records them; returns their ids.
async fn seed_billing_events(world: &World, addr: SocketAddr, count: u32) -> anyhow::Result<Vec<String>> {
    let client = world.analytics_client(&ServiceKind::ToolRegistry.spiffe_path(), addr)?;
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?;
    let ids: Vec<String> = (0..count).map(|i| format!("seed-{i:06}")).collect();
    let module_sha256 =
        soma_sign::sha256(&soma_sandbox::adapter("text_stats").context("no text_stats adapter")?);
    let recorded: Vec<anyhow::Result<()>> = futures::stream::iter(ids.clone())
        .map(|event_id| {
            let mut client = client.clone();
            let module_sha256 = module_sha256.to_vec();
            async move {
                client
                    .record_billing_event(pb::RecordBillingEventRequest {
                        run_id: format!("run-{event_id}"),
                        event_id,
                        tenant: TENANT.to_owned(),
                        tool: TOOL.to_owned(),
                        tool_version: VERSION.to_owned(),
                        amount: Some(pb::Money {
                            currency: "EUR".to_owned(),
                            micros: 100,
                        }),
                        fuel_consumed: 40_000,
                        duration_micros: 60,
                        peak_memory_bytes: SEED_PEAK_MEMORY_BYTES,
                        module_sha256,
                        occurred_at: Some(prost_types::Timestamp {
                            seconds: i64::try_from(now.as_secs())?,
                            nanos: 0,
                        }),
                    })
                    .await
                    .context("recording a billing event")?;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    recorded.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(ids)
}

// ---------------------------------------------------------------------------
// Part 1: server CPU per call.

/// Which server a measurement calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Registry,
    Analytics,
}

/// The SQLite connection threads of each server, by thread id.
#[derive(Debug, Default)]
struct SqliteOwners {
    registry: BTreeSet<u32>,
    analytics: BTreeSet<u32>,
}

impl SqliteOwners {
    /// Gives the connection threads that appeared in `spent` to `side`:
    /// only `side` was started or called meanwhile, and a pool opens a
    /// connection only when one of its own queries needs it.
    fn adopt(&mut self, spent: &Spent, side: Side) {
        for (tid, t) in &spent.threads {
            if t.name == SQLITE_THREAD && !self.registry.contains(tid) && !self.analytics.contains(tid) {
                match side {
                    Side::Registry => self.registry.insert(*tid),
                    Side::Analytics => self.analytics.insert(*tid),
                };
            }
        }
    }

    fn of(&self, side: Side) -> &BTreeSet<u32> {
        match side {
            Side::Registry => &self.registry,
            Side::Analytics => &self.analytics,
        }
    }
}

/// A window of the run in which only one server is called, and what every
/// thread spent in it.
async fn window<F, Fut>(
    ticks_per_second: u64,
    owners: &mut SqliteOwners,
    side: Side,
    f: F,
) -> anyhow::Result<(Fut::Output, Spent)>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    let before = Threads::now(ticks_per_second)?;
    let out = f().await;
    let spent = before.until(&Threads::now(ticks_per_second)?);
    owners.adopt(&spent, side);
    Ok((out, spent))
}

/// One closed-loop round against one server.
#[derive(Clone, Debug)]
struct Round {
    /// `ServerThread::cpu`: the runtime thread and its blocking pool.
    sample: CpuSample,
    /// Of which the blocking pool's threads (named like the runtime's
    /// thread, started after it): where the sandbox runs the adapter.
    blocking: Duration,
    /// The server's SQLite connection threads.
    sqlite: (Duration, Option<Duration>),
    /// Analytics' ledger writer thread (zero for the registry).
    ledger: (Duration, Option<Duration>),
    /// The sandbox's epoch ticker.
    epoch: (Duration, Option<Duration>),
    /// Every other thread: the client (main thread) and anything unattributed.
    others: Vec<(String, Duration)>,
    /// Threads that ended during the round (their CPU is lost).
    gone: usize,
}

impl Round {
    fn per_call(&self, d: Duration) -> f64 {
        d.as_secs_f64() * 1e6 / f64::from(self.sample.calls)
    }

    /// The server's runtime threads, µs per call.
    fn runtime_us(&self) -> f64 {
        self.sample.cpu_us_per_call()
    }

    /// Everything the server's threads spent, µs per call.
    fn server_us(&self) -> f64 {
        self.per_call(self.sample.cpu + self.sqlite.0 + self.ledger.0)
    }

    /// The same from `schedstat`, when every thread has one.
    fn server_sched_us(&self) -> Option<f64> {
        Some(self.sample.sched_us_per_call()? + self.per_call(self.sqlite.1? + self.ledger.1?))
    }

    /// The epoch ticker, µs per call: from `schedstat` where the kernel
    /// keeps it (its few µs per millisecond are far below a clock tick).
    fn epoch_us(&self) -> f64 {
        self.per_call(self.epoch.1.unwrap_or(self.epoch.0))
    }

    /// CPU of the threads outside the servers, µs per call.
    fn others_us(&self) -> f64 {
        self.per_call(self.others.iter().map(|(_, d)| *d).sum())
    }
}

/// `calls` closed-loop calls of `server` (`side`), and what each group of
/// threads spent meanwhile.
async fn round<F, Fut>(
    server: &ServerThread,
    side: Side,
    owners: &mut SqliteOwners,
    calls: u32,
    ticks_per_second: u64,
    call: F,
) -> anyhow::Result<Round>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let (sample, spent) = window(ticks_per_second, owners, side, || {
        measure_cpu(server, calls, ticks_per_second, call)
    })
    .await?;
    let sample = sample?;
    let sqlite_tids = owners.of(side);
    let name = match side {
        Side::Registry => REGISTRY_THREAD,
        Side::Analytics => ANALYTICS_THREAD,
    };
    // Thread ids grow: the runtime's own thread is the first of its name.
    let runtime_tid = spent
        .threads
        .iter()
        .filter(|(_, t)| t.name == name)
        .map(|(tid, _)| *tid)
        .min();
    let known = [
        REGISTRY_THREAD,
        ANALYTICS_THREAD,
        SQLITE_THREAD,
        LEDGER_THREAD,
        EPOCH_THREAD,
    ];
    let mut others: Vec<(String, Duration)> = Vec::new();
    for t in spent.threads.values() {
        if !known.contains(&t.name.as_str()) {
            match others.iter_mut().find(|(n, _)| *n == t.name) {
                Some((_, d)) => *d += t.stat,
                None => others.push((t.name.clone(), t.stat)),
            }
        }
    }
    Ok(Round {
        sample,
        blocking: spent.sum(|tid, t| t.name == name && Some(tid) != runtime_tid).0,
        sqlite: spent.sum(|tid, t| t.name == SQLITE_THREAD && sqlite_tids.contains(&tid)),
        ledger: if side == Side::Analytics {
            spent.sum(|_, t| t.name == LEDGER_THREAD)
        } else {
            (Duration::ZERO, Some(Duration::ZERO))
        },
        epoch: spent.sum(|_, t| t.name == EPOCH_THREAD),
        others,
        gone: spent.gone,
    })
}

/// Part 1: both servers started, Analytics seeded, `text_stats` published,
/// warm-ups, then alternating measured rounds.
fn cpu_part(args: &Args, ticks_per_second: u64, world: &World) -> anyhow::Result<CpuReport> {
    let registry_dir = tempfile::tempdir()?;
    let analytics_dir = tempfile::tempdir()?;
    let mut owners = SqliteOwners::default();

    let before = Threads::now(ticks_per_second)?;
    let (registry_server, registry) = start_registry(REGISTRY_THREAD, world, registry_dir.path(), None)?;
    owners.adopt(&before.until(&Threads::now(ticks_per_second)?), Side::Registry);
    let before = Threads::now(ticks_per_second)?;
    let analytics_server = start_analytics(
        ANALYTICS_THREAD,
        &world.authority,
        Some(world.verifier(&world.analytics_id)?),
        analytics_dir.path(),
    )?;
    owners.adopt(&before.until(&Threads::now(ticks_per_second)?), Side::Analytics);

    let runtime = client_runtime()?;
    let report = runtime.block_on(measure_cpu_part(
        args,
        ticks_per_second,
        world,
        &registry_server,
        &analytics_server,
        &registry,
        &mut owners,
    ));
    let threads = registry_server.cpu(ticks_per_second).map(|c| c.threads);
    // The clients' connections end with their runtime, so that the servers
    // have none to drain; the registry's sandbox (and its ticker) ends with
    // the last handle on it.
    drop(runtime);
    drop(registry);
    let stopped = registry_server.stop().and(analytics_server.stop());
    let mut report = report?;
    stopped?;
    report.registry_threads = threads?;
    Ok(report)
}

async fn measure_cpu_part(
    args: &Args,
    ticks_per_second: u64,
    world: &World,
    registry_server: &ServerThread,
    analytics_server: &ServerThread,
    registry: &Registry,
    owners: &mut SqliteOwners,
) -> anyhow::Result<CpuReport> {
    let (events, _) = window(ticks_per_second, owners, Side::Analytics, || {
        seed_billing_events(world, analytics_server.addr, args.events)
    })
    .await?;
    let events = events?;
    progress(&format!("recorded {} billing events in Analytics", events.len()));
    let (published, _) = window(ticks_per_second, owners, Side::Registry, || {
        publish_text_stats(world, registry_server.addr)
    })
    .await?;
    published?;

    let executor = Executor::new(world, registry_server.addr)?;
    let prover = Prover {
        client: world.analytics_client(&ServiceKind::Gateway.spiffe_path(), analytics_server.addr)?,
        claims: Arc::clone(&world.claims),
        audience: world.analytics_id.clone(),
        events: Arc::new(events),
        next: Arc::new(AtomicUsize::new(0)),
    };

    // Sizes of what is compared (protobuf bytes of each message).
    let execute_request = executor.request();
    let (first_execution, _) = window(ticks_per_second, owners, Side::Registry, || executor.call()).await?;
    let first_execution = first_execution?;
    let proof_request = prover.request();
    let (first_proof, _) = window(ticks_per_second, owners, Side::Analytics, || prover.call()).await?;
    let first_proof = first_proof?;
    let sizes = Sizes {
        input_json: serde_json::to_vec(&serde_json::json!({ "text": INPUT_TEXT }))?.len(),
        execute_request: execute_request.encoded_len(),
        execute_output: first_execution
            .output
            .as_ref()
            .map_or(0, prost::Message::encoded_len),
        execute_response: first_execution.encoded_len(),
        proof_request: proof_request.encoded_len(),
        proof_response: first_proof.encoded_len(),
        proof_hashes: first_proof.proof.len(),
        proof_tree: first_proof.tree_size,
    };

    let execute = || {
        let call = executor.call();
        async move { call.await.map(drop) }
    };
    let prove = || async { prover.call().await.map(drop) };

    let warmup = args.warmup.max(1);
    let (warmed, _) = window(ticks_per_second, owners, Side::Registry, || {
        closed_loop(warmup, execute)
    })
    .await?;
    warmed.context("ExecuteTool warm-up")?;
    let (warmed, _) = window(ticks_per_second, owners, Side::Analytics, || {
        closed_loop(warmup, prove)
    })
    .await?;
    warmed.context("InclusionProof warm-up")?;
    let dispatched_before = (
        registry_server.dispatched(EXECUTE_PATH),
        analytics_server.dispatched(PROOF_PATH),
    );

    let epoch_before = Threads::now(ticks_per_second)?;
    let part_started = Instant::now();
    let mut rounds = Vec::new();
    for i in 1..=args.rounds {
        // The order alternates, so that neither server always runs on a
        // warmer (or busier) machine.
        let (r, a) = if i % 2 == 1 {
            let r = round(
                registry_server,
                Side::Registry,
                owners,
                args.requests,
                ticks_per_second,
                execute,
            )
            .await?;
            let a = round(
                analytics_server,
                Side::Analytics,
                owners,
                args.requests,
                ticks_per_second,
                prove,
            )
            .await?;
            (r, a)
        } else {
            let a = round(
                analytics_server,
                Side::Analytics,
                owners,
                args.requests,
                ticks_per_second,
                prove,
            )
            .await?;
            let r = round(
                registry_server,
                Side::Registry,
                owners,
                args.requests,
                ticks_per_second,
                execute,
            )
            .await?;
            (r, a)
        };
        progress(&format!(
            "round {i}: server CPU per call  ExecuteTool {:>7.2} µs (runtime {:.2} + sqlite {:.2})  \
             InclusionProof {:>7.2} µs (runtime {:.2} + sqlite {:.2} + ledger {:.2})  ratio {:.3}  \
             epoch ticker {:.2} µs/call   throughput {:.0} / {:.0} calls/s",
            r.server_us(),
            r.runtime_us(),
            r.per_call(r.sqlite.0),
            a.server_us(),
            a.runtime_us(),
            a.per_call(a.sqlite.0),
            a.per_call(a.ledger.0),
            r.server_us() / a.server_us(),
            r.epoch_us(),
            r.sample.calls_per_second(),
            a.sample.calls_per_second(),
        ));
        rounds.push((r, a));
    }
    let epoch_spent = epoch_before.until(&Threads::now(ticks_per_second)?);
    let epoch_wall = part_started.elapsed();
    let (epoch_stat, epoch_sched) = epoch_spent.sum(|_, t| t.name == EPOCH_THREAD);
    let epoch_cpu = epoch_sched.unwrap_or(epoch_stat);
    let (outbox_rows, _) = registry.outbox_backlog().await?;
    let executions = u64::from(args.requests) * u64::from(args.rounds) + u64::from(warmup) + 1;

    Ok(CpuReport {
        rounds,
        sizes,
        dispatched: (
            registry_server
                .dispatched(EXECUTE_PATH)
                .saturating_sub(dispatched_before.0),
            analytics_server
                .dispatched(PROOF_PATH)
                .saturating_sub(dispatched_before.1),
        ),
        epoch_core_pct: epoch_cpu.as_secs_f64() / epoch_wall.as_secs_f64() * 100.0,
        outbox_rows,
        executions,
        registry_threads: 0,
        sqlite_threads: (owners.registry.len(), owners.analytics.len()),
    })
}

/// Protobuf sizes of the two calls compared.
#[derive(Debug)]
struct Sizes {
    input_json: usize,
    execute_request: usize,
    execute_output: usize,
    execute_response: usize,
    proof_request: usize,
    proof_response: usize,
    proof_hashes: usize,
    proof_tree: u64,
}

#[derive(Debug)]
struct CpuReport {
    /// (ExecuteTool, InclusionProof) of each round.
    rounds: Vec<(Round, Round)>,
    sizes: Sizes,
    /// Measured calls the mesh's authorization dispatched, per server.
    dispatched: (u64, u64),
    /// The epoch ticker's CPU over the measured rounds, % of one core.
    epoch_core_pct: f64,
    /// Rows in the registry's outbox at the end (no Analytics peer).
    outbox_rows: u64,
    /// Executions made in part 1.
    executions: u64,
    /// Threads named like the registry's server thread (its runtime thread
    /// and its blocking pool's).
    registry_threads: usize,
    /// SQLite connection threads of (the registry, Analytics).
    sqlite_threads: (usize, usize),
}

impl CpuReport {
    fn median(&self, f: impl Fn(&(Round, Round)) -> f64) -> f64 {
        bench::median(self.rounds.iter().map(f).collect())
    }

    #[expect(clippy::print_stdout, reason = "the benchmark's output")]
    fn print(&self, args: &Args) {
        let exec = self.median(|(r, _)| r.server_us());
        let proof = self.median(|(_, a)| a.server_us());
        let ratio = self.median(|(r, a)| r.server_us() / a.server_us());
        let exec_rt = self.median(|(r, _)| r.runtime_us());
        let exec_blocking = self.median(|(r, _)| r.per_call(r.blocking));
        let proof_blocking = self.median(|(_, a)| a.per_call(a.blocking));
        let proof_rt = self.median(|(_, a)| a.runtime_us());
        let ratio_rt = self.median(|(r, a)| r.runtime_us() / a.runtime_us());
        let exec_sql = self.median(|(r, _)| r.per_call(r.sqlite.0));
        let proof_sql = self.median(|(_, a)| a.per_call(a.sqlite.0));
        let proof_ledger = self.median(|(_, a)| a.per_call(a.ledger.0));
        let epoch = self.median(|(r, _)| r.epoch_us());
        let ratio_epoch = self.median(|(r, a)| (r.server_us() + r.epoch_us()) / a.server_us());
        let client_exec = self.median(|(r, _)| r.others_us());
        let client_proof = self.median(|(_, a)| a.others_us());
        let gone: usize = self.rounds.iter().map(|(r, a)| r.gone + a.gone).sum();
        let sched = self
            .rounds
            .iter()
            .all(|(r, a)| r.server_sched_us().is_some() && a.server_sched_us().is_some());
        let expected = u64::from(args.requests) * u64::from(args.rounds);
        let s = &self.sizes;

        println!();
        println!(
            "== ExecuteTool against InclusionProof: server CPU per call (closed loop, one HTTP/2 connection each)"
        );
        println!(
            "   {} rounds x {} calls per server after {} warm-up calls, the order alternating; median of rounds",
            args.rounds, args.requests, args.warmup
        );
        println!(
            "   ExecuteTool {TOOL}: input {} bytes of JSON; request {} B, response {} B (output {} B)",
            s.input_json, s.execute_request, s.execute_response, s.execute_output
        );
        println!(
            "   InclusionProof of one of {} recorded billing events: request {} B, response {} B \
             ({} hashes, tree of {})",
            args.events, s.proof_request, s.proof_response, s.proof_hashes, s.proof_tree
        );
        println!(
            "   both as the gateway with signed tenant claims, mTLS + authorization of the mesh runtime"
        );
        println!();
        println!("                                    runtime    sqlite    ledger     total   (µs/call)");
        println!(
            "   ExecuteTool (registry)         {exec_rt:>9.2} {exec_sql:>9.2} {:>9} {exec:>9.2}",
            "-"
        );
        println!(
            "   InclusionProof (analytics)     {proof_rt:>9.2} {proof_sql:>9.2} {proof_ledger:>9.2} {proof:>9.2}"
        );
        println!("   ratio ExecuteTool/InclusionProof  {ratio:>8.3}x   (target <= {TARGET_CPU_RATIO}x)");
        println!("   ratio, runtime threads only       {ratio_rt:>8.3}x");
        if sched {
            let se = self.median(|(r, _)| r.server_sched_us().unwrap_or(f64::NAN));
            let sp = self.median(|(_, a)| a.server_sched_us().unwrap_or(f64::NAN));
            println!(
                "   schedstat cross-check             {se:.2} / {sp:.2} µs/call, ratio {:.3}x",
                se / sp
            );
        }
        println!(
            "   sandbox epoch ticker (not in the ratio): {epoch:.2} µs per ExecuteTool during its rounds, \
             {:.2} % of a core whatever the load; ratio with it {ratio_epoch:.3}x",
            self.epoch_core_pct
        );
        println!(
            "   client and other threads: {client_exec:.2} µs per ExecuteTool, {client_proof:.2} µs per InclusionProof"
        );
        for (r, a) in self.rounds.iter().take(1) {
            let list = |round: &Round| {
                round
                    .others
                    .iter()
                    .filter(|(_, d)| !d.is_zero())
                    .map(|(n, d)| format!("{n} {:.2}", round.per_call(*d)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!(
                "     (round 1, µs/call: during ExecuteTool {}; during InclusionProof {})",
                list(r),
                list(a)
            );
        }
        println!(
            "   counted in runtime: {} threads named {REGISTRY_THREAD}, its runtime's and its blocking pool's, \
             where the adapter runs ({exec_blocking:.2} µs/call on the pool; Analytics {proof_blocking:.2})",
            self.registry_threads
        );
        println!(
            "   SQLite connection threads: registry {}, analytics {}; threads ended mid-round: {gone}",
            self.sqlite_threads.0, self.sqlite_threads.1
        );
        println!(
            "   mesh authorization dispatched {} ExecuteTool and {} InclusionProof of {expected} measured calls each",
            self.dispatched.0, self.dispatched.1
        );
        println!(
            "   registry outbox (no Analytics peer): {} rows after {} executions (and the audit events of \
             the key registration and the publish)",
            self.outbox_rows, self.executions
        );
        println!();
        println!("result.execute_cpu_us={exec:.3}");
        println!("result.proof_cpu_us={proof:.3}");
        println!("result.cpu_ratio={ratio:.4}");
        println!("result.cpu_ratio_target={TARGET_CPU_RATIO}");
        println!("result.execute_runtime_cpu_us={exec_rt:.3}");
        println!("result.proof_runtime_cpu_us={proof_rt:.3}");
        println!("result.cpu_ratio_runtime={ratio_rt:.4}");
        println!("result.execute_blocking_pool_cpu_us={exec_blocking:.3}");
        println!("result.execute_sqlite_cpu_us={exec_sql:.3}");
        println!("result.proof_sqlite_cpu_us={proof_sql:.3}");
        println!("result.proof_ledger_cpu_us={proof_ledger:.3}");
        println!("result.epoch_cpu_us_per_execute={epoch:.3}");
        println!("result.epoch_core_pct={:.3}", self.epoch_core_pct);
        println!("result.cpu_ratio_with_epoch={ratio_epoch:.4}");
        println!("result.execute_request_bytes={}", s.execute_request);
        println!("result.execute_response_bytes={}", s.execute_response);
        println!("result.proof_request_bytes={}", s.proof_request);
        println!("result.proof_response_bytes={}", s.proof_response);
        println!("result.dispatched_execute={}", self.dispatched.0);
        println!("result.dispatched_proof={}", self.dispatched.1);
        println!("result.dispatched_expected={expected}");
    }
}

// ---------------------------------------------------------------------------
// Part 2: executions per second sustained.

/// One sample, taken every second of the load.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Since the load started.
    at: Duration,
    /// Events in the registry's outbox.
    backlog: u64,
    /// Age of the oldest of them.
    oldest: Option<Duration>,
    /// The RSS of this process (the registry's server thread and the
    /// client), KiB.
    rss_kib: u64,
    /// The RSS of the Analytics process, KiB.
    analytics_rss_kib: u64,
}

/// `--serve-analytics DIR`: Analytics alone in this process, with an SVID
/// of the authority in `DIR` (made by the parent) and its database in
/// `DIR`; its address on standard output; served until standard input
/// closes (the parent closed it, or ended).
fn serve_analytics(dir: &Path) -> anyhow::Result<()> {
    let td = TrustDomain::parse(TRUST_DOMAIN)?;
    let authority = Authority::open_existing(dir, &td).context("opening the parent's authority")?;
    // Only the registry calls it, without claims: no claims key to verify.
    let server = start_analytics(ANALYTICS_PROCESS_THREAD, &authority, None, dir)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", server.addr)?;
        out.flush()?;
    }
    let waited = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())
        .context("waiting for standard input to close");
    server.stop().and(waited.map(drop))
}

/// Analytics served by a child process, this program run with
/// `--serve-analytics`: stopped by closing its standard input, killed if
/// dropped before.
struct AnalyticsProcess {
    child: std::process::Child,
    /// The child's standard input; closing it stops the child.
    stdin: Option<std::process::ChildStdin>,
    addr: SocketAddr,
    pid: u32,
}

impl AnalyticsProcess {
    /// Starts the child on the authority and data directory `dir` and waits
    /// for its address.
    fn spawn(dir: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating this program")?;
        let mut child = std::process::Command::new(exe)
            .arg("--serve-analytics")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the Analytics process")?;
        let stdin = child.stdin.take();
        let addr = child
            .stdout
            .take()
            .context("the Analytics process has no standard output")
            .and_then(|stdout| {
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line)?;
                line.trim()
                    .parse::<SocketAddr>()
                    .with_context(|| format!("the Analytics process printed {line:?}, not its address"))
            });
        let pid = child.id();
        let mut this = Self {
            child,
            stdin,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid,
        };
        // On an error, dropping `this` ends the child.
        this.addr = addr?;
        Ok(this)
    }

    /// Closes the child's standard input and waits for it to stop, at most
    /// `CHILD_STOP_TIMEOUT`.
    fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let deadline = Instant::now() + CHILD_STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the Analytics process ended with {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the Analytics process did not stop within {} s of its standard input closing",
                    CHILD_STOP_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AnalyticsProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Part 2: Analytics in a child process, then the registry delivering to
/// it; the load; the drain; the child stopped, and the billing events in
/// its database.
fn load_part(args: &Args, world: &World) -> anyhow::Result<LoadReport> {
    let registry_dir = tempfile::tempdir()?;
    let analytics = AnalyticsProcess::spawn(&world.dir)?;
    progress(&format!(
        "   Analytics: process {} on {}; the registry in this process ({})",
        analytics.pid,
        analytics.addr,
        std::process::id()
    ));
    let (registry_server, registry) = start_registry(
        "load-registry",
        world,
        registry_dir.path(),
        Some((analytics.addr, world.analytics_id.clone())),
    )?;
    let runtime = client_runtime()?;
    let loaded = runtime.block_on(load(args, world, &registry, registry_server.addr, analytics.pid));
    drop(registry);
    let stopped = registry_server.stop().and(analytics.stop());
    let (mut report, made) = loaded?;
    stopped?;
    // The child has stopped: its database is read alone.
    let recorded = runtime.block_on(analytics_billing_ids(&world.dir))?;
    report.billing_events = u64::try_from(recorded.len())?;
    report.billing_missing = u64::try_from(made.difference(&recorded).count())?;
    report.billing_unexpected = u64::try_from(recorded.difference(&made).count())?;
    Ok(report)
}

/// The load and the drain; returns the report (its billing figures still
/// zero) and the execution numbers answered.
async fn load(
    args: &Args,
    world: &World,
    registry: &Registry,
    registry_addr: SocketAddr,
    analytics_pid: u32,
) -> anyhow::Result<(LoadReport, HashSet<u128>)> {
    publish_text_stats(world, registry_addr).await?;
    let executor = Executor::new(world, registry_addr)?;
    // The first execution verifies and compiles the release.
    let first = executor.call().await.context("the first execution")?;
    let period = Duration::from_secs(1) / args.rate;
    let duration = Duration::from_secs(u64::from(args.seconds));
    let count = usize::try_from(duration.as_nanos() / period.as_nanos().max(1))?;
    // Each answered id, kept in memory written before the load (the RSS
    // measured is this process's, the client's included).
    let mut made = resident_vec(count + 1, u128::MAX);
    made.push(execution_number(&first.billing_event_id)?);
    let ids = Arc::new(Mutex::new(made));
    let failures = Arc::new(AtomicU64::new(0));
    let first_failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));

    let call = || {
        let pending = executor.call();
        let (ids, failures, first_failure) = (
            Arc::clone(&ids),
            Arc::clone(&failures),
            Arc::clone(&first_failure),
        );
        async move {
            match pending.await.and_then(|r| execution_number(&r.billing_event_id)) {
                Ok(id) => ids.lock().unwrap_or_else(PoisonError::into_inner).push(id),
                Err(e) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    first_failure
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert_with(|| format!("{e:#}"));
                }
            }
            // A failure is counted, not returned: the run goes on, so that
            // the report says how many failed.
            Ok(())
        }
    };
    let started = Instant::now();
    let (latencies, samples) = tokio::join!(
        open_loop_flat(period, duration, call),
        sample_every_second(registry, analytics_pid, started, args.seconds)
    );
    let latencies = latencies?;
    let samples = samples?;
    let load_wall = started.elapsed();

    // The drain: from the last reply until the outbox is empty.
    let load_end = Instant::now();
    let (backlog_at_end, _) = registry.outbox_backlog().await?;
    let deadline = Duration::from_secs(args.drain_timeout);
    let backlog_drained = loop {
        let (count, _) = registry.outbox_backlog().await?;
        if count == 0 {
            break Some(load_end.elapsed());
        }
        if load_end.elapsed() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rss_after_drain = rss_kib()?;
    let analytics_rss_after_drain = process_rss_kib(analytics_pid)?;

    let made: HashSet<u128> = std::mem::take(&mut *ids.lock().unwrap_or_else(PoisonError::into_inner))
        .into_iter()
        .collect();
    let first_failure = first_failure
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let report = LoadReport {
        launched: u64::try_from(latencies.samples.len())? + 1,
        failures: failures.load(Ordering::Relaxed),
        first_failure,
        executions: u64::try_from(made.len())?,
        billing_events: 0,
        billing_missing: 0,
        billing_unexpected: 0,
        load_wall,
        latencies,
        samples,
        backlog_at_end,
        backlog_drained,
        rss_after_drain,
        analytics_rss_after_drain,
    };
    Ok((report, made))
}

/// The outbox backlog, this process's RSS and the Analytics process's at
/// each whole second of `seconds` from `started`.
async fn sample_every_second(
    registry: &Registry,
    analytics_pid: u32,
    started: Instant,
    seconds: u32,
) -> anyhow::Result<Vec<Sample>> {
    let second = Duration::from_secs(1);
    let mut ticker = tokio::time::interval_at((started + second).into(), second);
    let mut samples = Vec::with_capacity(usize::try_from(seconds)?);
    for _ in 0..seconds {
        ticker.tick().await;
        let (backlog, oldest) = registry.outbox_backlog().await?;
        samples.push(Sample {
            at: started.elapsed(),
            backlog,
            oldest: oldest.map(|ns| Duration::from_nanos(u64::try_from(ns).unwrap_or(0))),
            rss_kib: rss_kib()?,
            analytics_rss_kib: process_rss_kib(analytics_pid)?,
        });
    }
    Ok(samples)
}

/// The 128 random bits of an execution id (`exec-` and 32 hex digits).
fn execution_number(id: &str) -> anyhow::Result<u128> {
    id.strip_prefix("exec-")
        .filter(|hex| hex.len() == 32)
        .and_then(|hex| u128::from_str_radix(hex, 16).ok())
        .with_context(|| format!("{id:?} is not an execution id"))
}

/// The billing event ids Analytics holds, read from its database (a second
/// handle on its SQLite file, or the only one once it has stopped), as
/// execution numbers.
async fn analytics_billing_ids(data_dir: &Path) -> anyhow::Result<HashSet<u128>> {
    let db = Database::connect(
        &StoreSettings::sqlite(data_dir.to_owned()),
        ServiceKind::Analytics.name(),
    )
    .await?;
    let pool = db.as_sqlite().context("the Analytics database is not SQLite")?;
    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM billing_events")
        .fetch_all(pool)
        .await?;
    db.close().await;
    ids.iter().map(|id| execution_number(id)).collect()
}

/// An RSS series, KiB, after its first `warm-up` samples: the sample that
/// ends the warm-up is the reference of the rest.
#[derive(Clone, Copy, Debug)]
struct RssFigures {
    base: u64,
    min: u64,
    max: u64,
    last: u64,
    /// The rest's largest deviation from `base`, signed, %.
    max_dev_pct: f64,
}

impl RssFigures {
    #[expect(clippy::cast_precision_loss, reason = "KiB counts far below 2^52")]
    fn of(series: impl Iterator<Item = u64> + Clone, warmup: usize) -> Self {
        let base = series.clone().nth(warmup.saturating_sub(1)).unwrap_or(0);
        let rest = series.skip(warmup);
        let deviation = |v: u64| (v as f64 - base as f64) / base as f64 * 100.0;
        Self {
            base,
            min: rest.clone().min().unwrap_or(0),
            max: rest.clone().max().unwrap_or(0),
            last: rest.clone().last().unwrap_or(0),
            max_dev_pct: rest
                .map(deviation)
                .max_by(|a, b| a.abs().total_cmp(&b.abs()))
                .unwrap_or(0.0),
        }
    }
}

#[derive(Debug)]
struct LoadReport {
    /// Executions launched, the first (compiling) one included.
    launched: u64,
    failures: u64,
    first_failure: Option<String>,
    /// Executions answered, each with its billing event id.
    executions: u64,
    billing_events: u64,
    /// Executions whose billing event Analytics does not hold.
    billing_missing: u64,
    /// Billing events in Analytics that no execution answered.
    billing_unexpected: u64,
    /// From the first launch to the last reply.
    load_wall: Duration,
    latencies: Latencies,
    samples: Vec<Sample>,
    backlog_at_end: u64,
    /// Time from the last reply to an empty outbox (`None`: not within
    /// `--drain-timeout`).
    backlog_drained: Option<Duration>,
    /// This process's RSS once the outbox drained, KiB.
    rss_after_drain: u64,
    /// The Analytics process's RSS then, KiB.
    analytics_rss_after_drain: u64,
}

impl LoadReport {
    #[expect(clippy::print_stdout, reason = "the benchmark's output")]
    fn print(&self, args: &Args) {
        let lat = &self.latencies;
        let (p50, p99) = (lat.percentile_us(50.0), lat.percentile_us(99.0));
        let completed_rate = lat.samples.len() as f64 / self.load_wall.as_secs_f64();
        let max_backlog = self.samples.iter().map(|s| s.backlog).max().unwrap_or(0);
        let max_age = self
            .samples
            .iter()
            .filter_map(|s| s.oldest)
            .max()
            .unwrap_or_default();
        let warm = usize::try_from(args.rss_warmup).unwrap_or(usize::MAX);
        let registry = RssFigures::of(self.samples.iter().map(|s| s.rss_kib), warm);
        let analytics = RssFigures::of(self.samples.iter().map(|s| s.analytics_rss_kib), warm);
        let mb = |kib: u64| kib as f64 / 1024.0;
        let drained = self.backlog_drained.map_or_else(
            || format!("not within {} s", args.drain_timeout),
            |d| format!("{:.2} s", d.as_secs_f64()),
        );

        println!();
        println!(
            "== ExecuteTool at {} calls/s for {} s, open loop (one long-lived connection); billing outbox \
             delivering over mTLS to Analytics in a process of its own",
            args.rate, args.seconds
        );
        println!(
            "   launched {} calls at {:.1}/s; answered {:.1}/s over {:.2} s; failures {}",
            lat.samples.len(),
            lat.achieved_rate(),
            completed_rate,
            self.load_wall.as_secs_f64(),
            self.failures
        );
        println!("   latency p50 {p50:.1} µs  p99 {p99:.1} µs");
        println!(
            "   outbox backlog: max {max_backlog} (oldest {:.0} ms at most), {} when the load ended, \
             drained to 0 in {drained} after it",
            max_age.as_secs_f64() * 1e3,
            self.backlog_at_end
        );
        for (what, figures, after_drain, target) in [
            (
                "registry process (registry server + client)",
                registry,
                self.rss_after_drain,
                format!(" (target within ±{TARGET_RSS_DEVIATION_PCT} %)"),
            ),
            (
                "Analytics process (its ledger view grows by design)",
                analytics,
                self.analytics_rss_after_drain,
                String::new(),
            ),
        ] {
            println!(
                "   RSS, {what}: {:.1} MB after the first {} s; then min {:.1} / max {:.1} / last {:.1} MB; \
                 max deviation {:+.1} %{target}; {:.1} MB after the drain",
                mb(figures.base),
                args.rss_warmup,
                mb(figures.min),
                mb(figures.max),
                mb(figures.last),
                figures.max_dev_pct,
                mb(after_drain)
            );
        }
        println!(
            "   billing events in Analytics {} for {} executions answered ({} launched; {} missing, {} unexpected)",
            self.billing_events,
            self.executions,
            self.launched,
            self.billing_missing,
            self.billing_unexpected
        );
        println!("   per second (s: backlog, oldest ms, registry RSS MB, Analytics RSS MB):");
        for chunk in self.samples.chunks(4) {
            let line: Vec<String> = chunk
                .iter()
                .map(|s| {
                    format!(
                        "{:>3.0}: {:>5} {:>5.0} {:>6.1} {:>6.1}",
                        s.at.as_secs_f64(),
                        s.backlog,
                        s.oldest.unwrap_or_default().as_secs_f64() * 1e3,
                        mb(s.rss_kib),
                        mb(s.analytics_rss_kib)
                    )
                })
                .collect();
            println!("     {}", line.join(" |"));
        }
        println!();
        println!("result.load_rate_target={}", args.rate);
        println!("result.load_seconds={}", args.seconds);
        println!("result.load_launched_rate={:.1}", lat.achieved_rate());
        println!("result.load_completed_rate={completed_rate:.1}");
        println!("result.load_calls={}", lat.samples.len());
        println!("result.load_failures={}", self.failures);
        println!("result.load_p50_us={p50:.1}");
        println!("result.load_p99_us={p99:.1}");
        println!("result.backlog_max={max_backlog}");
        println!("result.backlog_max_age_ms={:.0}", max_age.as_secs_f64() * 1e3);
        println!("result.backlog_at_load_end={}", self.backlog_at_end);
        println!(
            "result.backlog_drained_s={}",
            self.backlog_drained
                .map_or_else(|| "never".to_owned(), |d| format!("{:.2}", d.as_secs_f64()))
        );
        println!("result.rss_warmup_s={}", args.rss_warmup);
        // rss_*: the registry's process, the target's; analytics_rss_*: the
        // Analytics process.
        for (prefix, figures, after_drain) in [
            ("rss", registry, self.rss_after_drain),
            ("analytics_rss", analytics, self.analytics_rss_after_drain),
        ] {
            println!("result.{prefix}_base_mb={:.1}", mb(figures.base));
            println!("result.{prefix}_min_mb={:.1}", mb(figures.min));
            println!("result.{prefix}_max_mb={:.1}", mb(figures.max));
            println!("result.{prefix}_last_mb={:.1}", mb(figures.last));
            println!("result.{prefix}_dev_pct={:+.1}", figures.max_dev_pct);
            println!("result.{prefix}_after_drain_mb={:.1}", mb(after_drain));
        }
        println!("result.rss_dev_target_pct={TARGET_RSS_DEVIATION_PCT}");
        println!("result.billing_events={}", self.billing_events);
        println!("result.billing_expected={}", self.executions);
    }
}
