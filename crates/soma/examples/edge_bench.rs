//! Cost of the gateway's edge, against a direct mTLS call to the same
//! backend measured in the same run.
//!
//! Everything runs in this process with real cryptography: a development
//! authority in a temp dir mints the SVIDs; Analytics (`soma_mesh::Application`
//! over mTLS, SQLite in a temp dir) verifies claims envelopes signed by the
//! gateway's Ed25519 key; the gateway is assembled by
//! `soma_gateway::Gateway::build` from `GatewayConfig::dev` (development
//! HS256 issuer, region `local`), with its rate limit raised out of the way,
//! and its edge serves plaintext HTTP on 127.0.0.1:0. Each server runs alone
//! on its own OS thread with a current-thread tokio runtime (see
//! `common/bench.rs`); the clients run on the main thread's runtime.
//!
//! The RPC is `somastack.v1.Analytics/LedgerCheckpoint` (capability
//! `ledger:read`):
//!
//! - edge: `GET /v1/ledger/checkpoint` with `authorization: Bearer <HS256
//!   token holding ledger:read>`, over HTTP/1.1 keep-alive (`--protocol h2c`
//!   for HTTP/2 with prior knowledge on one connection instead): JWT,
//!   residency, capability, kill switches, rate limit, transcoding, the
//!   claims envelope (signed anew when the one for these claims is half its
//!   lifetime old) and the mTLS hop to Analytics;
//! - direct: the same RPC over one mTLS HTTP/2 connection to the same
//!   Analytics, from the gateway's SVID, carrying a claims envelope signed by
//!   the same gateway key — what the gateway sends. The caller holds its
//!   envelope and re-signs it every few seconds, as the edge does.
//!
//! - hop (a reference, not a baseline): the same HTTP client and route
//!   against a bare axum server on its own thread that answers every request
//!   with the reply the edge gives, doing nothing else. Its latency is what
//!   one plaintext loopback HTTP round trip between these threads costs on
//!   this machine, the part of the edge's overhead that no edge code can
//!   remove.
//!
//! Two measurements:
//!
//! 1. latency: one request launched every `1/--rate` s on its own task for
//!    `--seconds` s, after `--warmup-seconds` of the same on each path; rounds
//!    go edge, direct, hop, edge, direct, hop, …; p50 and p99 per round and
//!    the median over rounds of the per-round p50 ratio edge/direct;
//! 2. the edge's CPU per request (the edge runtime's threads, from /proc):
//!    closed loop, `--requests` requests per kind and round, valid tokens vs
//!    each hostile kind (alg none, bad signature, expired, unknown kid,
//!    garbage; see [`TokenKind`]), every hostile request answered 401, each
//!    kind with the reason of the check it aims at;
//!    medians over `--cpu-rounds` rounds of the per-round ratio to valid.
//!    Analytics' own counters show that every valid request reached it and
//!    no hostile one did.
//!
//! No tracing subscriber is installed (as in `mesh_bench`): log lines cost
//! their level check only. Nothing here passes or fails on timing: the
//! targets are printed next to the measurements. The process fails only
//! when a request is answered otherwise than expected.
//!
//! The last lines are `result.<key>=<value>`, for `scripts/bench/edge.sh`.

#[path = "common/bench.rs"]
mod bench;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ring::rand::SecureRandom as _;
use serde_json::{Value, json};
use soma_auth::{ClaimsSigner, ClaimsVerifier, SignedClaims};
use soma_ca::Authority;
use soma_identity::{SpiffeId, TrustDomain};
use soma_mesh::{Application, MeshSettings, Peers, ServiceKind};
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_store::{Database, StoreSettings};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use crate::bench::{
    CpuSample, Latencies, Serve, ServerThread, Started, clock_ticks_per_second, closed_loop, identity,
    measure_cpu, open_loop, progress,
};

const TRUST_DOMAIN: &str = "somastack.bench";
/// The edge route of the measured RPC.
const ROUTE: &str = "/v1/ledger/checkpoint";
/// The measured RPC, as Analytics counts it.
const GRPC_PATH: &str = "/somastack.v1.Analytics/LedgerCheckpoint";
/// The capability its policy requires.
const CAPABILITY: &str = "ledger:read";
const TENANT: &str = "bench";
const REGION: &str = "local";
/// Key id of the gateway's envelope key.
const GATEWAY_KEY_ID: &str = "gateway-1";
/// The direct caller re-signs its envelope when it is this old (it lives 30 s).
const ENVELOPE_REFRESH: Duration = Duration::from_secs(5);

/// Targets set by the issue; printed, never asserted.
const TARGET_P50_RATIO: f64 = 1.25;
const TARGET_HOSTILE_CPU_RATIO: f64 = 1.0;

#[derive(Debug, Parser)]
#[command(about = "Latency and CPU of the gateway's edge against a direct mTLS call to the backend")]
struct Args {
    /// Open-loop requests per second.
    #[arg(long, default_value_t = 1_000)]
    rate: u32,
    /// Open-loop duration per path and round, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Open-loop warm-up per path before the rounds, in seconds.
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u32,
    /// Open-loop rounds (edge and direct alternate).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Closed-loop requests measured per token kind and round.
    #[arg(long, default_value_t = 20_000)]
    requests: u32,
    /// Closed-loop requests per token kind before measuring.
    #[arg(long, default_value_t = 1_000)]
    warmup: u32,
    /// Closed-loop rounds (every token kind in each).
    #[arg(long, default_value_t = 3)]
    cpu_rounds: u32,
    /// The edge client's protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Http1)]
    protocol: Protocol,
}

/// How the client speaks plaintext HTTP to the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// HTTP/1.1 keep-alive, pooled connections.
    Http1,
    /// HTTP/2 with prior knowledge, one connection.
    H2c,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Self::H2c => "h2c",
            Self::Http1 => "http1",
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if [
        args.rate,
        args.seconds,
        args.rounds,
        args.requests,
        args.cpu_rounds,
    ]
    .contains(&0)
    {
        bail!("--rate, --seconds, --rounds, --requests and --cpu-rounds must be greater than zero");
    }
    let ticks_per_second = clock_ticks_per_second()?;

    let ca_dir = tempfile::tempdir()?;
    let data_dir = tempfile::tempdir()?;
    let authority = Authority::open_or_create(ca_dir.path(), &TrustDomain::parse(TRUST_DOMAIN)?)
        .context("opening the authority")?;
    let analytics_store = identity(&authority, &ServiceKind::Analytics.spiffe_path())?;
    let gateway_store = identity(&authority, &ServiceKind::Gateway.spiffe_path())?;
    let analytics_id = analytics_store.own_id().clone();
    let gateway_id = gateway_store.own_id().clone();

    // One gateway key: the edge signs with it, the direct caller with a copy,
    // Analytics trusts it for envelopes from the gateway's SPIFFE ID.
    let (edge_signer, key_der) = ClaimsSigner::generate(GATEWAY_KEY_ID)?;
    let direct_signer = ClaimsSigner::from_pkcs8_der(GATEWAY_KEY_ID, &key_der)?;
    let verifier = ClaimsVerifier::new(
        gateway_id,
        analytics_id.clone(),
        vec![(GATEWAY_KEY_ID.to_owned(), edge_signer.public_key())],
    );

    let analytics_dir = data_dir.path().join("analytics");
    let analytics_config = analytics_config()?;
    let analytics = ServerThread::spawn("bench-analytics", move |stop| async move {
        let kind = ServiceKind::Analytics;
        let settings = MeshSettings::load(kind, None, |_| None)?;
        let db = connect(&analytics_dir, kind).await?;
        db.migrate(&soma_analytics::MIGRATIONS).await?;
        let spec = soma_analytics::spec(db, &settings.limits, analytics_config).await?;
        let app = Application::build(settings, analytics_store, Some(verifier), spec).await?;
        let (addr, metrics) = (app.local_addr(), app.metrics());
        let serve: Serve = Box::pin(async move {
            app.run_until_stopped(async move {
                let _ = stop.await;
            })
            .await
            .context("analytics")
        });
        Ok(Started {
            addr,
            serve,
            metrics: Some(metrics),
        })
    })?;

    let gateway_dir = data_dir.path().join("gateway");
    std::fs::create_dir_all(&gateway_dir)?;
    let local = soma_gateway::Region::parse(REGION).map_err(anyhow::Error::msg)?;
    let mut config = soma_gateway::GatewayConfig::dev(&gateway_dir, &local, Some("127.0.0.1:0".parse()?))?;
    config.rate_limit.requests_per_second = 1e6;
    config.rate_limit.burst = 1_000_000;
    let issuer = Issuer::from_jwk_file(&gateway_dir.join("dev-issuer.jwk"))?;
    let peers = Peers {
        analytics: Some(analytics.addr.into()),
        ..Default::default()
    };
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

    // The reply the hop answers with: the edge's own, fetched once below.
    let hop_reply: Arc<std::sync::OnceLock<Bytes>> = Arc::new(std::sync::OnceLock::new());
    let hop_body = Arc::clone(&hop_reply);
    let hop = ServerThread::spawn("bench-hop", move |stop| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().route(
            ROUTE,
            axum::routing::get(move || {
                let body = hop_body.get().cloned().unwrap_or_default();
                async move { ([(http::header::CONTENT_TYPE, "application/json")], body) }
            }),
        );
        let serve: Serve = Box::pin(async move {
            // TCP_NODELAY, as the edge sets it on its plaintext connections.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.await;
                })
                .await
                .context("hop")
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
        // The channel's connection task runs on the client runtime.
        let direct = Direct {
            channel: soma_mesh::channel(gateway_store, analytics.addr, analytics_id.clone())?,
            envelope: Envelope::new(direct_signer, analytics_id)?,
        };
        let hop = Hop {
            url: format!("http://{}{ROUTE}", hop.addr).parse()?,
            reply: hop_reply,
        };
        run(&args, ticks_per_second, &edge, &analytics, &issuer, direct, hop).await
    });
    // The connections are gone with the client runtime; stop the servers either way.
    drop(runtime);
    let stopped = edge.stop().and(analytics.stop()).and(hop.stop());
    let report = report?;
    stopped?;
    report.print(&args);
    Ok(())
}

/// A SQLite database for `kind` under `dir`.
async fn connect(dir: &Path, kind: ServiceKind) -> anyhow::Result<Database> {
    Ok(Database::connect(&StoreSettings::sqlite(dir.to_owned()), kind.name()).await?)
}

/// Fresh Analytics keys: a row keyring and the checkpoint signing key.
fn analytics_config() -> anyhow::Result<soma_analytics::AnalyticsConfig> {
    let (row_keys, _) = soma_sign::HmacKeyring::generate("row-1")?;
    let (_, pkcs8) = soma_sign::Ed25519Signer::generate(soma_sign::KeyId::new("analytics-1")?)?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(std::str::from_utf8)
        .collect::<Result<_, _>>()?;
    Ok(soma_analytics::AnalyticsConfig {
        row_keys,
        signing_key_pem: format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        ),
        signing_key_id: "analytics-1".to_owned(),
        ledger_origin: format!("{TRUST_DOMAIN}/analytics"),
        max_export_span: soma_analytics::DEFAULT_MAX_EXPORT_SPAN,
        drills: soma_analytics::DrillConfig::default(),
        anomaly: soma_analytics::AnomalyConfig::default(),
    })
}

async fn run(
    args: &Args,
    ticks_per_second: u64,
    edge: &ServerThread,
    analytics: &ServerThread,
    issuer: &Issuer,
    mut direct: Direct,
    hop: Hop,
) -> anyhow::Result<Report> {
    let client = http_client(args.protocol);
    let url: http::Uri = format!("http://{}{ROUTE}", edge.addr).parse()?;
    let valid = issuer.bearer(TokenKind::Valid)?;

    // Each hostile kind must be refused by the check it aims at.
    for kind in TokenKind::HOSTILE {
        let reply = edge_request(&client, &url, &issuer.bearer(kind)?).await?;
        let reason = reply.reason();
        ensure!(
            reply.status == StatusCode::UNAUTHORIZED && reason == kind.expected_reason(),
            "a {} token was answered {} {reason:?}, expected 401 {:?}",
            kind.name(),
            reply.status,
            kind.expected_reason()
        );
    }
    // A valid token reaches the very backend the direct path calls: both
    // carry the same signed checkpoint note.
    let reply = edge_request(&client, &url, &valid).await?;
    ensure!(
        reply.status == StatusCode::OK,
        "a valid token was answered {} {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    let note = reply
        .json()?
        .get("note")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let direct_note = direct.checkpoint().await?.note;
    ensure!(
        note.as_deref() == Some(direct_note.as_str()) && !direct_note.is_empty(),
        "the edge answered the checkpoint note {note:?}, the direct call {direct_note:?}"
    );

    let edge_call = || expect_status(client.clone(), url.clone(), valid.clone(), StatusCode::OK);
    let mut direct_call = || direct.call();
    // The hop answers with the edge's very reply, and is asked the same way.
    let _ = hop.reply.set(reply.body.clone());
    let hop_call = || expect_status(client.clone(), hop.url.clone(), valid.clone(), StatusCode::OK);

    // 1. Latency, open loop.
    let period = Duration::from_secs(1) / args.rate;
    if args.warmup_seconds > 0 {
        let warmup = Duration::from_secs(u64::from(args.warmup_seconds));
        progress(&format!(
            "warm-up: {} s open loop on each path",
            args.warmup_seconds
        ));
        open_loop(period, warmup, edge_call)
            .await
            .context("edge warm-up")?;
        open_loop(period, warmup, &mut direct_call)
            .await
            .context("direct warm-up")?;
        open_loop(period, warmup, hop_call).await.context("hop warm-up")?;
    }
    let duration = Duration::from_secs(u64::from(args.seconds));
    let mut latency = Vec::new();
    for round in 1..=args.rounds {
        let e = open_loop(period, duration, edge_call)
            .await
            .context("edge open loop")?;
        let d = open_loop(period, duration, &mut direct_call)
            .await
            .context("direct open loop")?;
        let h = open_loop(period, duration, hop_call)
            .await
            .context("hop open loop")?;
        progress(&format!(
            "round {round}: edge p50 {:>7.1} µs p99 {:>8.1} µs   direct p50 {:>7.1} µs p99 {:>8.1} µs   \
             hop p50 {:>7.1} µs   p50 ratio {:.3}   ({:.0} / {:.0} / {:.0} launched/s)",
            e.percentile_us(50.0),
            e.percentile_us(99.0),
            d.percentile_us(50.0),
            d.percentile_us(99.0),
            h.percentile_us(50.0),
            e.percentile_us(50.0) / d.percentile_us(50.0),
            e.achieved_rate(),
            d.achieved_rate(),
            h.achieved_rate(),
        ));
        latency.push((e, d, h));
    }

    // 2. The edge's CPU per request, closed loop.
    let bearers = TokenKind::ALL
        .iter()
        .map(|&kind| Ok((kind, issuer.bearer(kind)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let call = |kind: TokenKind, bearer: &HeaderValue| {
        let status = if kind == TokenKind::Valid {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        let bearer = bearer.clone();
        let (client, url) = (client.clone(), url.clone());
        move || expect_status(client.clone(), url.clone(), bearer.clone(), status)
    };
    for (kind, bearer) in &bearers {
        closed_loop(args.warmup, call(*kind, bearer))
            .await
            .with_context(|| format!("{} warm-up", kind.name()))?;
    }
    let mut cpu = Vec::new();
    let mut backend = BackendCalls::default();
    for round in 1..=args.cpu_rounds {
        let mut samples = Vec::new();
        for (kind, bearer) in &bearers {
            let before = analytics.dispatched(GRPC_PATH);
            let sample = measure_cpu(edge, args.requests, ticks_per_second, call(*kind, bearer))
                .await
                .with_context(|| format!("{} requests", kind.name()))?;
            let reached = analytics.dispatched(GRPC_PATH).saturating_sub(before);
            if *kind == TokenKind::Valid {
                backend.valid += reached;
                backend.valid_sent += u64::from(args.requests);
            } else {
                backend.hostile += reached;
            }
            samples.push((*kind, sample));
        }
        let line = samples
            .iter()
            .map(|(kind, s)| format!("{} {:.2} µs", kind.name(), s.cpu_us_per_call()))
            .collect::<Vec<_>>()
            .join("  ");
        progress(&format!(
            "round {round}: edge CPU per request  {line}   (valid {:.0} req/s, threads {})",
            samples[0].1.calls_per_second(),
            edge.cpu(ticks_per_second)?.threads,
        ));
        cpu.push(samples);
    }

    Ok(Report {
        latency,
        cpu,
        backend,
        edge_threads: edge.cpu(ticks_per_second)?.threads,
    })
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client(protocol: Protocol) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let mut builder = Client::builder(TokioExecutor::new());
    if protocol == Protocol::H2c {
        builder.http2_only(true);
    }
    builder.build(connector)
}

/// An edge reply.
struct Reply {
    status: StatusCode,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the edge answered {} with a body that is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The refusal's `reason`, empty when there is none.
    fn reason(&self) -> String {
        self.json()
            .ok()
            .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default()
    }
}

/// One `GET` of the route with `bearer` as the `authorization` value; the
/// whole body is read, so that the connection is reused.
async fn edge_request(client: &HttpClient, url: &http::Uri, bearer: &HeaderValue) -> anyhow::Result<Reply> {
    let request = http::Request::get(url.clone())
        .header(http::header::AUTHORIZATION, bearer.clone())
        .body(Full::new(Bytes::new()))?;
    let response = client.request(request).await.context("edge request")?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("edge reply body")?
        .to_bytes();
    Ok(Reply { status, body })
}

/// One edge request, which must be answered `status`.
async fn expect_status(
    client: HttpClient,
    url: http::Uri,
    bearer: HeaderValue,
    status: StatusCode,
) -> anyhow::Result<()> {
    let reply = edge_request(&client, &url, &bearer).await?;
    if reply.status != status {
        bail!(
            "the edge answered {} ({}), expected {status}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    Ok(())
}

/// The reference path: a bare HTTP server that answers with the edge's reply.
struct Hop {
    url: http::Uri,
    /// Set once the edge's reply is known, before the first measured call.
    reply: Arc<std::sync::OnceLock<Bytes>>,
}

/// The direct path: the gateway's identity, its held envelope, one channel.
struct Direct {
    channel: Channel,
    envelope: Envelope,
}

impl Direct {
    /// One `LedgerCheckpoint` with the current envelope.
    fn checkpoint(&mut self) -> impl Future<Output = anyhow::Result<pb::Checkpoint>> + Send + use<> {
        let mut client = AnalyticsClient::new(self.channel.clone());
        let signed = self.envelope.current().cloned();
        async move {
            let mut request = tonic::Request::new(pb::LedgerCheckpointRequest {});
            signed?.insert_into(request.metadata_mut());
            request.metadata_mut().insert(
                soma_gateway::context::REQUEST_ID_HEADER,
                AsciiMetadataValue::from_static("bench-direct"),
            );
            let reply = client
                .ledger_checkpoint(request)
                .await
                .context("direct LedgerCheckpoint")?;
            Ok(reply.into_inner())
        }
    }

    /// The same, its answer dropped: what the latency rounds time.
    fn call(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send + use<> {
        let checkpoint = self.checkpoint();
        async move { checkpoint.await.map(drop) }
    }
}

/// A claims envelope for Analytics, as the gateway seals one for an
/// admitted request of the benchmark's tenant.
struct Envelope {
    signer: ClaimsSigner,
    audience: SpiffeId,
    signed: SignedClaims,
    at: Instant,
}

impl Envelope {
    fn new(signer: ClaimsSigner, audience: SpiffeId) -> anyhow::Result<Self> {
        let signed = Self::seal(&signer, &audience)?;
        Ok(Self {
            signer,
            audience,
            signed,
            at: Instant::now(),
        })
    }

    /// The envelope, re-signed when it is older than [`ENVELOPE_REFRESH`].
    fn current(&mut self) -> anyhow::Result<&SignedClaims> {
        if self.at.elapsed() >= ENVELOPE_REFRESH {
            self.signed = Self::seal(&self.signer, &self.audience)?;
            self.at = Instant::now();
        }
        Ok(&self.signed)
    }

    fn seal(signer: &ClaimsSigner, audience: &SpiffeId) -> anyhow::Result<SignedClaims> {
        let claims = pb::VerifiedClaims {
            tenant: TENANT.to_owned(),
            subject: format!("user@{TENANT}"),
            region: REGION.to_owned(),
            capabilities: vec![CAPABILITY.to_owned()],
            mfa: false,
            request_id: "bench-direct".to_owned(),
            ..Default::default()
        };
        Ok(signer.sign(claims, audience, Duration::from_secs(30), SystemTime::now())?)
    }
}

/// What a token presented to the edge is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenKind {
    /// HS256 of the development issuer with `ledger:read`, valid for an hour.
    Valid,
    /// A valid token whose header says `alg: none`, its signature kept.
    AlgNone,
    /// Signed with another key of the same length.
    BadSignature,
    /// Expired an hour ago (issued two hours ago), correctly signed.
    Expired,
    /// Correctly signed, naming a key id the issuer does not have.
    UnknownKid,
    /// Random base64url as long as a valid token, with no dots.
    Garbage,
}

impl TokenKind {
    /// `Valid` first: each round's ratios divide by it.
    const ALL: [Self; 6] = [
        Self::Valid,
        Self::AlgNone,
        Self::BadSignature,
        Self::Expired,
        Self::UnknownKid,
        Self::Garbage,
    ];
    const HOSTILE: [Self; 5] = [
        Self::AlgNone,
        Self::BadSignature,
        Self::Expired,
        Self::UnknownKid,
        Self::Garbage,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::AlgNone => "alg_none",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::UnknownKid => "unknown_kid",
            Self::Garbage => "garbage",
        }
    }

    /// The reason the edge gives when it refuses this kind.
    fn expected_reason(self) -> &'static str {
        match self {
            Self::Valid => "",
            Self::AlgNone => "alg_not_allowed",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::UnknownKid => "unknown_kid",
            Self::Garbage => "token_malformed",
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

    /// `Bearer <token>` of this kind, valid for an hour when valid at all.
    fn bearer(&self, kind: TokenKind) -> anyhow::Result<HeaderValue> {
        let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())?;
        let claims = |issued: i64| {
            json!({
                "iss": soma_gateway::config::DEV_ISSUER,
                "aud": soma_gateway::config::DEV_AUDIENCE,
                "sub": format!("user@{TENANT}"),
                "tenant": TENANT,
                "region": REGION,
                "scope": CAPABILITY,
                "amr": ["pwd"],
                "auth_time": issued,
                "iat": issued,
                "exp": issued + 3600,
            })
        };
        let header = |alg: &str, kid: &str| json!({"alg": alg, "typ": "JWT", "kid": kid});
        let token = match kind {
            TokenKind::Valid => hs256(&self.secret, &header("HS256", &self.kid), &claims(now)),
            TokenKind::AlgNone => {
                // A valid token with its header rewritten to `none` and its
                // signature kept: it reaches the algorithm check, where the
                // empty-signature form would already fail at parsing, like
                // garbage.
                let valid = hs256(&self.secret, &header("HS256", &self.kid), &claims(now));
                let (_, rest) = valid.split_once('.').context("a compact JWS has dots")?;
                let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                format!("{}.{rest}", b64.encode(header("none", &self.kid).to_string()))
            }
            TokenKind::BadSignature => {
                let other = random_bytes(self.secret.len())?;
                hs256(&other, &header("HS256", &self.kid), &claims(now))
            }
            TokenKind::Expired => hs256(&self.secret, &header("HS256", &self.kid), &claims(now - 7200)),
            TokenKind::UnknownKid => hs256(&self.secret, &header("HS256", "soma-dev-unknown"), &claims(now)),
            TokenKind::Garbage => {
                // As long as a valid token, with no structure at all.
                let valid_len = hs256(&self.secret, &header("HS256", &self.kid), &claims(now)).len();
                let mut text =
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(valid_len)?);
                text.truncate(valid_len);
                text
            }
        };
        Ok(HeaderValue::try_from(format!("Bearer {token}"))?)
    }
}

/// A compact HS256 JWS over `claims`.
fn hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64.encode(tag.as_ref()))
}

fn random_bytes(n: usize) -> anyhow::Result<Vec<u8>> {
    let mut bytes = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    Ok(bytes)
}

/// Calls of `LedgerCheckpoint` Analytics authorized during the CPU rounds.
#[derive(Debug, Default)]
struct BackendCalls {
    valid_sent: u64,
    valid: u64,
    hostile: u64,
}

#[derive(Debug)]
struct Report {
    /// Per round: edge, direct, hop.
    latency: Vec<(Latencies, Latencies, Latencies)>,
    /// Per round: one sample per token kind, in [`TokenKind::ALL`] order.
    cpu: Vec<Vec<(TokenKind, CpuSample)>>,
    backend: BackendCalls,
    edge_threads: usize,
}

impl Report {
    #[expect(clippy::print_stdout, reason = "the benchmark's output")]
    fn print(&self, args: &Args) {
        let lat = |f: &dyn Fn(&(Latencies, Latencies, Latencies)) -> f64| {
            bench::median(self.latency.iter().map(f).collect())
        };
        let (e50, e99) = (
            lat(&|r| r.0.percentile_us(50.0)),
            lat(&|r| r.0.percentile_us(99.0)),
        );
        let (d50, d99) = (
            lat(&|r| r.1.percentile_us(50.0)),
            lat(&|r| r.1.percentile_us(99.0)),
        );
        let h50 = lat(&|r| r.2.percentile_us(50.0));
        let overhead50 = lat(&|r| r.0.percentile_us(50.0) - r.1.percentile_us(50.0));
        let p50_ratio = lat(&|r| r.0.percentile_us(50.0) / r.1.percentile_us(50.0));
        let p99_ratio = lat(&|r| r.0.percentile_us(99.0) / r.1.percentile_us(99.0));
        let calls: usize = self.latency.iter().map(|r| r.0.samples.len()).sum();

        println!();
        println!(
            "== latency of {ROUTE}, open loop at {} req/s, {} rounds x {} s per path after {} s warm-up",
            args.rate, args.rounds, args.seconds, args.warmup_seconds
        );
        println!(
            "   edge: plaintext {} to the gateway's edge, HS256 token with {CAPABILITY}, forwarded over mTLS",
            args.protocol.name()
        );
        println!("   direct: mTLS gRPC LedgerCheckpoint to the same Analytics with the gateway's envelope");
        println!("   medians over rounds ({calls} edge requests in all):");
        println!("   edge      p50 {e50:>8.1} µs  p99 {e99:>8.1} µs");
        println!("   direct    p50 {d50:>8.1} µs  p99 {d99:>8.1} µs");
        println!(
            "   hop       p50 {h50:>8.1} µs               (bare HTTP server on its own thread, same client)"
        );
        println!(
            "   edge - direct p50 {overhead50:>6.1} µs, of which one loopback HTTP round trip (hop p50) {h50:.1} µs"
        );
        println!(
            "   ratio     p50 {p50_ratio:>8.3}x    (target <= {TARGET_P50_RATIO}x; median of per-round ratios)"
        );
        println!("   ratio     p99 {p99_ratio:>8.3}x");

        let cpu_of = |kind: TokenKind| {
            bench::median(
                self.cpu
                    .iter()
                    .filter_map(|round| round.iter().find(|(k, _)| *k == kind))
                    .map(|(_, s)| s.cpu_us_per_call())
                    .collect(),
            )
        };
        let ratio_of = |kind: TokenKind| {
            bench::median(
                self.cpu
                    .iter()
                    .filter_map(|round| {
                        let valid = round.iter().find(|(k, _)| *k == TokenKind::Valid)?.1;
                        let hostile = round.iter().find(|(k, _)| *k == kind)?.1;
                        Some(hostile.cpu_us_per_call() / valid.cpu_us_per_call())
                    })
                    .collect(),
            )
        };
        let sched_of = |kind: TokenKind| {
            bench::median(
                self.cpu
                    .iter()
                    .filter_map(|round| round.iter().find(|(k, _)| *k == kind))
                    .filter_map(|(_, s)| s.sched_us_per_call())
                    .collect(),
            )
        };
        println!();
        println!(
            "== the edge's CPU per request (utime+stime of its {} runtime thread(s)), closed loop",
            self.edge_threads
        );
        println!(
            "   {} rounds x {} requests per kind after {} warm-up requests; median of rounds",
            args.cpu_rounds, args.requests, args.warmup
        );
        println!("   kind             CPU/request   schedstat   hostile/valid   target");
        for kind in TokenKind::ALL {
            let ratio = if kind == TokenKind::Valid {
                "-".to_owned()
            } else {
                format!("{:.3}x", ratio_of(kind))
            };
            let target = if kind == TokenKind::Valid {
                "-".to_owned()
            } else {
                format!("<= {TARGET_HOSTILE_CPU_RATIO}x")
            };
            println!(
                "   {:<15} {:>9.2} µs  {:>7.2} µs   {ratio:>13}   {target}",
                kind.name(),
                cpu_of(kind),
                sched_of(kind)
            );
        }
        println!(
            "   Analytics authorized {} of {} valid requests and {} hostile ones",
            self.backend.valid, self.backend.valid_sent, self.backend.hostile
        );

        println!();
        println!("result.protocol={}", args.protocol.name());
        println!("result.p50_us_edge={e50:.1}");
        println!("result.p99_us_edge={e99:.1}");
        println!("result.p50_us_direct={d50:.1}");
        println!("result.p99_us_direct={d99:.1}");
        println!("result.p50_us_hop={h50:.1}");
        println!("result.p50_us_edge_minus_direct={overhead50:.1}");
        println!("result.p50_ratio={p50_ratio:.4}");
        println!("result.p99_ratio={p99_ratio:.4}");
        println!("result.p50_ratio_target={TARGET_P50_RATIO}");
        for kind in TokenKind::ALL {
            println!("result.cpu_us_{}={:.3}", kind.name(), cpu_of(kind));
        }
        for kind in TokenKind::HOSTILE {
            println!("result.cpu_ratio_{}={:.4}", kind.name(), ratio_of(kind));
        }
        println!("result.cpu_ratio_target={TARGET_HOSTILE_CPU_RATIO}");
        println!("result.backend_valid={}", self.backend.valid);
        println!("result.backend_valid_sent={}", self.backend.valid_sent);
        println!("result.backend_hostile={}", self.backend.hostile);
    }
}
